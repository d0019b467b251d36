"""Everything syncworker keeps in Redis: the keys, the Lua scripts, connections, the quarantine
store and the stats readers.
"""
