"""Everything that works without napari or Qt: I/O, prompts, preprocessing, models, inference."""
