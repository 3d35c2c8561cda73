module gotlsapp

go 1.19
