"""Ansible plugins of the deploy tool (loaded by ansible-playbook from this folder)."""
