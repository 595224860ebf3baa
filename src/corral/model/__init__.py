"""Frozen records shared by every room: the spec, instances, nodes, events.

Never mutate what the store returns: use `dataclasses.replace`.
"""
