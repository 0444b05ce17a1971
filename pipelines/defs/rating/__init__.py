"""Rating domain: customer list, usage aggregates, rated usage, invoice previews."""
