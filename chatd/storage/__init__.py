"""
What chatd keeps beyond a process's life: the rooms that last, their
members' memberships and read markers, and their messages, in SQLite (one
process) or PostgreSQL (several), behind one interface
(:class:`chatd.storage.durable.Durable`).
"""
