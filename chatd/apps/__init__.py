"""What applications use besides the WebSocket: the HTTP server API."""
