"""The model repository: where a training host publishes what it built and an inference node,
with no source code, pulls it from, verified before any of it runs.

    stores.py      the addresses: a folder, s3://bucket/prefix, https:// (read-only)
    published.py   a version's layout and its commit, version.json; listing
    signing.py     model-signing bundles: sign, trusted keys, verify
    publish.py     `mar publish`
    pull.py        `mar pull`
    installed.py   the signatures beside archives in a model store, re-verified before they load
"""

from scripts.repository.installed import check_installed
from scripts.repository.publish import Published, publish
from scripts.repository.published import PublishedVersion, published_versions
from scripts.repository.pull import Pulled, pull
from scripts.repository.signing import TrustedKeys, short
from scripts.repository.stores import open_store

__all__ = ["publish", "Published", "pull", "Pulled", "PublishedVersion", "published_versions",
           "TrustedKeys", "check_installed", "open_store", "short"]
