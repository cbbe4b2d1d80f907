"""OCR corpora: engines (rapidocr / tesseract), text normalisation and tokens, the word vocabulary
and labels, text area and text-dense crops. The registered stages live in ``curate.stages.ocr``."""
