"""The algorithm: Sample -> Fuse / Select, their pool, signatures, store, meter and one-body step driver.

Nothing here knows about config files, backends or batch jobs; the public names are re-exported by
``fusion_dspy``.
"""
