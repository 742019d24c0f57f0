"""Bridges from other training libraries into tiviz (`tiviz.integrations.trl`: TRL and transformers Trainers)."""
