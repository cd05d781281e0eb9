"""napari-medimp: MEDIMP kidney-graft DCE-MRI embeddings, prognosis and saliency in napari."""

__version__ = "0.1.0"
