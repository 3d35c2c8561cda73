module seedserver

go 1.19
