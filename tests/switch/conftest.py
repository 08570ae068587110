"""Switch tests: pytest puts this folder on sys.path, so violin_netlab imports as a module."""
