"""MRNet-v1.0 data: the reader, validation, DICOM import, the prepared cache and the synthetic
knee phantoms."""
