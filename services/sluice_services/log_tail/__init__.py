"""log-tail: ``tail -F`` over HTTP for allow-listed files, one reader per file, many followers."""
