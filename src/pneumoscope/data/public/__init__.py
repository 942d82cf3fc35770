"""The public datasets this project reads, one command away (``pneumoscope data download``).

- ``catalog``: what each set is, where its files live, their published checksums, its
  licence and citation, and where downloads are cached;
- ``fetch``: HTTP downloads that resume after an interruption and fail fast offline;
- ``install``: unpacking into a folder atomically (a temporary folder, then a rename);
- ``download``: the command's steps, from a name to a folder ``data prepare`` reads.

Data layer: imports ``core`` only, so the layout readers and the data report can use the
catalog without an import cycle.
"""
