"""Getting weight bytes into memory: pread and dtype conversion (reader), O_DIRECT into aligned buffers
(direct), mapped page-cache views (mapped), the guard that turns a vanished or short file into an error
(file_guard) and huge pages for big buffers (hugepages). Knows tensors by their file spans (weights/), not
what they are for."""
