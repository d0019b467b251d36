from syncworker.cli import main

main()
