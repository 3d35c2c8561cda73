module seedclient

go 1.19
