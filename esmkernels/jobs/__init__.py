"""Job plumbing shared by the API and the command line.

FASTA reading and input checks (`fasta`), progress bars (`progress`), atomic writes, shard
planning and run fingerprints (`files`), and the sharded embedding store (`embeddings`).
Jobs sit above `esmkernels.models` and below the CLI, which only parses, validates, calls and
writes. See docs/ARCHITECTURE.md.
"""
