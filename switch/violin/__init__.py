"""VIOLIN virtual switch: Ethernet frames of a virtual domain carried in authenticated UDP datagrams.

The package is split into a sans-I/O core (``frames``, ``fdb``, ``codec``, ``peers``, ``core``,
``counters``, ``config``, ``control``) that never touches a socket, and a thin I/O layer
(``tap``, ``daemon``, ``ctl``) around it.
"""

__version__ = "0.1.0"
