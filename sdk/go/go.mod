module github.com/policyhub/policyhub/sdk/go

go 1.26.0

require (
	github.com/go-jose/go-jose/v4 v4.1.9
	github.com/gowebpki/jcs v1.0.2
	golang.org/x/mod v0.43.0
)
