"""Built-in source plugins, one module per ModelArts endpoint family.

Each module is a pluggy plugin registered exactly as a third-party package's would be (see
``collector_plugin.plugins.DEFAULT_PLUGINS``).
"""
