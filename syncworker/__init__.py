"""syncworker: ESP hygiene webhooks -> suppression ledger -> every CRM and analytics destination."""

__version__ = "0.1.0"
