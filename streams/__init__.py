"""Redis Streams read through consumer groups: what every process that consumes a stream in a group does alike.

A room of its own on the process-plumbing layer, importing only redis-py, because two process rooms consume
streams this way (accounting the usage stream, the verifier the spot checks) and neither may import the other.
`protocol` could not hold it: it is the processes' contract (the streams' and groups' names are in
`protocol.keys`), not their plumbing.
"""

from streams.consumer_group import ConsumerGroup, Entry

__all__ = ["ConsumerGroup", "Entry"]
