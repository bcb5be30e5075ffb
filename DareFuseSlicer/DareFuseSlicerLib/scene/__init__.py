"""MRML adapters: the only code that converts between SimpleITK (LPS) and Slicer nodes (RAS).

volumes (images <-> scalar volumes), segmentation (labels <-> segmentation nodes with terminology), display
(colour maps, slice views), nodes (ownership tags, digests, subject hierarchy), files (scene set-up, .seg.nrrd,
.mrb). All of it works on a node's own scene: the Slicer application's or a headless slicer-core one.
"""
