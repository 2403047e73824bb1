"""paypush: WeChat Pay Native checkout with the result pushed to the shopper's browser."""
