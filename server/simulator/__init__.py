"""A WeChat Pay v2 simulator: the merchant API, a "phone" that scans and pays, notifies."""
