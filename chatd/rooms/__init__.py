"""Rooms: the state the rules read (``state``) and each room's recent messages (``history``)."""
