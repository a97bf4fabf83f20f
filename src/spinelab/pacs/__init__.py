"""spinelab next to a PACS: a DICOM node (pynetdicom) that receives studies, predicts them and sends the SEG and
SR back, and a C-MOVE pull of one study."""
