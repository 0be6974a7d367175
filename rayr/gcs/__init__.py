"""The Global Control Store on Redis: typed table access, Lua scripts, the head monitor."""
