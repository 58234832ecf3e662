"""augzarr trainer: stream a store into a Keras CNN."""
