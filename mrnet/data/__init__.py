"""MRNet-v1.0 data: the reader, validation, DICOM import, the prepared cache, probability
tables and the synthetic knee phantoms."""
