"""The tiny method sections and models that the every-method tests share (test_distributed, test_resume)."""

SECTIONS: dict[str, dict] = {
    "supervised": {"name": "supervised", "stream": "labeled"},
    "advsemiseg": {"name": "advsemiseg", "semi_start": 0, "d_width": 8},
    "lsdseg": {"name": "lsdseg", "d_width": 8, "g_width": 4},
    "mixmatch": {"name": "mixmatch", "side_range": [8, 24], "output_size": 16, "patches_per_image": 3,
                 "candidates_per_image": 16},
    "u2pl": {"name": "u2pl", "num_queries": 4, "num_negatives": 3, "queue_length": 64},
}  # fmt: skip
"""`method` sections that differ from a method's defaults (the others train with their defaults)."""

MODELS: dict[str, dict] = {
    "u2pl": {"name": "deeplabv3plus", "backbone": "resnet18", "width": 4},
    "colorization": {"name": "hypercolumn", "width": 4},
    "mixmatch": {"name": "hypercolumn", "width": 4},
}
"""`model` sections of the methods that need another segmenter than the toy one."""
