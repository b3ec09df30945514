"""The pure core: no asyncio, no sockets, no I/O libraries, no wall clock.

Everything here is bytes/values in, values out, so it is tested without an event loop.
"""
