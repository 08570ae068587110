"""The one-machine lab: cached host root filesystem, nspawn hosts, `viocluster lab`."""
