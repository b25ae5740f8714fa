//! troupe-actors: the actor kinds of the ten systems (land system by system).
