"""Face detectors besides core.faces' Haar cascades: :mod:`core.detectors.mtcnn` (MTCNN, pretrained weights
from the facenet-pytorch wheel)."""
