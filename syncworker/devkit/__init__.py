"""Not production: the demo, an embedded Redis, process supervision for local runs, and loopback
emulators of every destination.
"""
