"""The ModelArts sources: one plugin module per endpoint family, on the public source API only.

What is ModelArts-specific lives here: endpoint templates, response models, discovery, record
attributes and the byte-log reader shared by the two log sources. The receiver configures the
``modelarts`` connection (``modelarts:`` in the config: endpoint, project, auth, limits); these
sources take it from their context with :func:`~.client.modelarts_client`.
"""
