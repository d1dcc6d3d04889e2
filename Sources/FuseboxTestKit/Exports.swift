// The test kit's servers and processes start with the product's own (FuseboxProcess: the process runner behind
// `fusebox run`, the redis-server `fusebox demo` starts); tests that import the kit see them too.
@_exported import FuseboxProcess
