"""Names shared by the data engine, the network, the pipeline and the Slicer side."""

# Input contrasts in network channel order.
CONTRASTS = ("t1", "t1ce", "t2", "flair")
# BraTS 2023 file suffixes for each contrast (CASE-t1n.nii.gz, ...).
BRATS_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
# Labels as BraTS 2023 writes them.
LABELS = {1: "NETC", 2: "SNFH", 3: "ET"}
LABEL_NAMES = {
    "NETC": "Non-enhancing tumour core",
    "SNFH": "Surrounding non-enhancing FLAIR hyperintensity",
    "ET": "Enhancing tumour",
}
# Colours used by BraTS figures (RGB 0..1).
LABEL_COLOURS = {"NETC": (1.0, 0.0, 0.0), "SNFH": (0.0, 1.0, 0.0), "ET": (1.0, 1.0, 0.0)}
# Nested regions evaluated by BraTS, as sets of labels.
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
# Image-level tumour classes, in classifier output order.
CLASSES = ("no_tumour", "glioma", "meningioma", "metastasis")
