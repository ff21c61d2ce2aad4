"""The Hugging Face Hub protocol over the registry (``/v1/hf``, ``store.api.routes_hf``).

* ``store.hf.repos``: what a repo, a revision and a commit id are in lorafleet's terms
  (``namespace/name``, a version or ``main``, a digest of the version's files) and the
  files and tree a revision shows.
* ``store.hf.commits``: an HF commit (``create_commit`` / ``upload_folder``) turned into a
  registry upload through the same packaging, validation, quotas and approval.
* ``store.hf.lfs``: the signed upload URLs of the Git LFS flow (``LORAFLEET_HF_UPLOAD_MODE=lfs``).
"""
