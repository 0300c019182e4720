"""What the end-to-end tests share, a module a job: clients, servers, raw sockets, Redis."""
