"""Deploying a site to its login node over SSH (fabric): `crossfl deploy/status/logs/stop`.

remote.py  one SSH connection, dry-run, connection errors as one line
transfer.py  bundle upload (swapped in whole), resumable verified uploads of images and data
gce.py  the globus-compute-endpoint CLI on the login node
coreconfig.py  crossfl's keys merged into the endpoint's config.yaml, an admin's kept
deployment.py  what the deploy steps share (Deployment) and report (DeployOutcome)
steps.py  the deploy steps, each a function of one Deployment
image.py  the image step: upload, pull by digest, or build at the site, verified
jobs.py  batch jobs and login-node processes started at a site, and waiting for them
doctor.py  `crossfl doctor`: what the login node and the scheduler say, one check a line
flow.py  deploy (the steps in order, recorded in deploy/state/<site>.json), status, logs, stop
"""

from crossfl.deploy.flow import deploy_site, site_logs, site_status, stop_site

__all__ = ["deploy_site", "site_logs", "site_status", "stop_site"]
