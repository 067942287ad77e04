"""The results store: append-only run files with full provenance, and the records they hold.

    runs.py        writer (locked, fsynced lines) and reader (migration on read), file and folder names
    records.py     BenchRecord and ParityRecord: frozen dataclasses, one writer, one reader
    provenance.py  commit, machine, library versions and UTC time of a run
    ranks.py       torchrun ranks: per-rank run files and merging their records
"""
