"""Hospital systems: DICOM results a PACS shows (SR, secondary capture), DICOMweb in and out."""
