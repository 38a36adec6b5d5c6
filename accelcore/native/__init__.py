"""Unmodified native programs on the simulated devices (``accelctl run``).

* :mod:`accelcore.native.remote` — the server's side of native client mode:
  the client's memory through ``process_vm_readv``/``process_vm_writev``, its
  descriptors through ``pidfd_getfd``.
* :mod:`accelcore.native.build` — the ``LD_PRELOAD`` library (``shim.c``, libc
  only), compiled with the system C compiler at first use into a per-user cache.
"""
