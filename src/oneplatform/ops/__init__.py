"""Operations: long-running work as rows of named steps, driven by leased workers."""
