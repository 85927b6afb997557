"""The bundle folder a compile writes and everything else reads.

| module      | what it holds                                                                |
| ----------- | ---------------------------------------------------------------------------- |
| folder      | the folder: staged and renamed, sha256 of every file, read_manifest, verify   |
| manifest    | manifest.json typed on both ends: Manifest and its frozen sections            |
| provenance  | one key for what a bundle is made of, and the one cache of compiled bundles   |
"""
