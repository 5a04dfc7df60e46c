//! Export and import of store entries as one zstd-compressed tar stream.
