module github.com/loopai/loopai/bindings/go

go 1.19
