"""The code that runs at a facility, inside the image: LoRA training and evaluation on
site-local data, device selection and a warm per-worker model cache; a training task may run
data-parallel over several ranks (``launch``: starting them; ``distributed``: a rank's place and
process group; ``train``: one rank's work, a one-rank task being the case of one;
``sharding``: FSDP2 for large base models; ``telemetry``: what the result reports about
devices). ``encoding``: a site's records and their tokens, without peft or transformers.

This package never imports crossfl.server, crossfl.deploy, crossfl.render or crossfl.sites.
The entry points the server submits are in ``crossfl.client.tasks``; what they take and return
(the one contract both sides import) in ``crossfl.client.contract``; ``crossfl.client.probes``
holds stand-ins for measuring and for fault tests.
"""
