"""LFM2-VL inputs without torch: image loading, the image processor and prompt expansion, equal to
transformers' Lfm2VlImageProcessor / Lfm2VlProcessor."""

from .image_processor import ImageProcessorSettings, Lfm2VlImageProcessor, ProcessedImages
from .images import ImageInput, load_image
from .processor import IMAGE_TOKEN, Lfm2VlProcessor, VlInputs

__all__ = ["IMAGE_TOKEN", "ImageInput", "ImageProcessorSettings", "Lfm2VlImageProcessor", "Lfm2VlProcessor",
           "ProcessedImages", "VlInputs", "load_image"]
